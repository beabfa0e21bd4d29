"""The ImageFolder export's class folders: torchvision's ImageFolder numbers them by sorted name."""
from infer_distill.outputs.export import class_folders


def test_sorted_class_names_are_the_folders():
    assert class_folders(["airplane", "automobile", "bird"]) == ["airplane", "automobile", "bird"]
    assert class_folders([str(d) for d in range(10)]) == [str(d) for d in range(10)]


def test_unsorted_class_names_get_their_label_as_prefix_so_sorted_order_is_label_order():
    classes = [str(d) for d in range(12)]          # "10" sorts before "2"
    folders = class_folders(classes)
    assert folders[:3] == ["00_0", "01_1", "02_2"] and folders[11] == "11_11"
    assert sorted(folders) == folders               # ImageFolder's target = the index here = the label
    assert class_folders(["dog", "cat"]) == ["0_dog", "1_cat"]
